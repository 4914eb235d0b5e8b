"""The `vosd` command line: the typer app (`app`) and the daemon and queue commands (`daemon_commands`);
`vosd segment`, `eval` and `train` live with what they run (streamer/segment.py, workers/)."""
