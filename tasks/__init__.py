"""Training recipes and the command line (installed as `seqbackbone.tasks`)."""
