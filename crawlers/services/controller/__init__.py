"""Seed 000's controller: the run API, the dispatcher, the regions and their workers.

It reaches workers only through Redis: batches on the regions' queues, facts
back on the event stream (``HYDRA_EVENTS_KEY``), and starts or stops them
through a launcher (local processes or Scrapyd).
"""
