"""One module per verb of the ``metarec`` command; each has ``run(args) -> exit code``."""
