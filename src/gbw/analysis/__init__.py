"""Tables, plots and reports built from run logs (never from inside a training step)."""
