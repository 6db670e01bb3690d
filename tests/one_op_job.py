"""A job of one op that does nothing: for tests that need run records (runs left dead, slots held),
not work done."""

from dagster import job, op


@op
def noop():
    pass


@job
def quick():
    noop()
