"""What the tests share, one module per kind of helper (imported by tests; not fixtures):

- `api`: settings for tests, the `Api` helper, problem+json checks and the app in-process.
- `cli`: running `python -m invigilator` (and other commands) as a user would.
- `clock`: an event loop whose clock moves only when the loop would wait (unit tests).
- `db`: arranging data in a real database; time moves by writing past timestamps.
- `guide`: the setup guide's SQL blocks, as test data.
- `ports`: a free loopback port.
- `schema`: a comparable picture of the schema, from the catalogs.
- `sweeps`: the sweeper's set-based arranging, consistency checks and tripwire.
- `waiting`: polling with a bound (never a fixed sleep).
- `webhooks`: a loopback receiver and a delivery worker with test-sized timings.
"""
