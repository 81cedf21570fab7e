"""Reading corpora, SentencePiece, Arrow storage and token-budget batching."""
