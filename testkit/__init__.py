"""What the tests and the benches share, owned by neither: the project's own processes and
real servers (mosquitto, PostgreSQL, ejabberd, a partitioning TCP proxy) started on free
ports in temporary folders, the test logins, and the fault campaign.

Not shipped with the package: it is development tooling, used from a source checkout.
"""
