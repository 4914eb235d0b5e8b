"""vosd model side: the XMem engine, evaluation, training and the worker process."""
