"""What a fit leaves on disk: the run checkpoint, the run folder and its lock."""
