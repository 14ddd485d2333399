"""End-to-end jobs the CLI runs: retrain, pretrain (and the default backbone build), demo."""
