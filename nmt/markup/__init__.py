"""Documents: HTML and Markdown translated block by block, inline markup placed by alignment."""
