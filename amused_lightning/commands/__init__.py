"""The handlers of `python -m amused_lightning COMMAND`: parse what the user asked for, then call the rest."""
