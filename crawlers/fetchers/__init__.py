"""Fetchers for web and API channels (issue 10): capturing a site in a headless
browser (:mod:`.capture`), the git repository of generated fetcher versions
(:mod:`.repository`) and the catalog of which channel runs which version
(:mod:`.catalog`). Generated fetchers reproduce what the browser saw without it,
and are regenerated (healed) when the site changes.
"""
