"""The training job: a window of `sequences` in, a registered challenger out (train), and what it
needs: the window's shards and counts (window), the fit loop (fit) over resident or streamed
batches (sources), several processes and machines (distributed), checkpoints, the GBM bar the
LSTM must beat (baseline) and the settings search (tuning, tuned)."""
