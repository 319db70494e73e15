"""The experiment harness that reproduces the SaLSA paper on top of :mod:`optim`.

Data flows one way: config -> runner -> (data, model, optimizer, loggers) -> trainer -> run
record. Nothing here is imported by :mod:`optim`.
"""
