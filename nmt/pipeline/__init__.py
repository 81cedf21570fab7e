"""The commands, one module per command group, each wiring data, models, training and decoding
together for `nmt.cli`: prepare, train (and average), translate, evaluate (and align-eval),
export, plot (and plot-metrics), corpus. They hold no maths of their own."""
