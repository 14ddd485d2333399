"""Lightning glue: training loops for the adaptation methods and for contrastive pretraining.

The models themselves are plain torch modules defined elsewhere in ``adapt``; this package
only owns loops, optimisers, schedules, devices and loggers. Importing it changes no global
state: the CLI entry (``adapt.cli``) decides which warnings and log lines a user sees.
"""
