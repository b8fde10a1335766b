"""The scheduler (seed 001): fires task configs on time and dispatches them by priority.

``triggers`` says when a schedule fires and what a restart owes (an injected clock
keeps it testable without sleeping); ``queue`` decides which fired jobs start now under
the global and per-task limits, and how long a retry waits. Both are pure, so the
service around them (database, streams, launchers, ``secrets``) stays the only part
with side effects.
"""
