"""The operator console (seed 001's user interface), served by ``scrapy scheduler`` under ``/ui``.

One module per page family, each with a ``router(console)``: ``tasks``,
``jobs``, ``runs`` (seed 000's runs and regions), ``channels`` (seed 003's
channels and review queue), ``deadletters`` and ``charts``; ``app`` puts them
together, ``auth`` signs people in, ``live`` pushes changes to open pages.
"""
