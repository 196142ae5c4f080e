"""Randomized differential testing against Debian's C xenstored 4.17.

Identical random request streams go over three dom0 socket connections and
a guest domain's ring to pyxenstored and to the C daemon; every reply and
every watch event is compared, and each difference is shrunk to a minimal
sequence.

* :mod:`.model`: the steps (one raw request each) and their seeded
  generator;
* :mod:`.runner`: a client with its own framing, and the player of a
  sequence of steps on one daemon, which returns plain-data observations;
* :mod:`.oracle`: the comparison, with the explicit list of documented
  differences, the shrinker, and campaigns of many seeds;
* :mod:`.daemons`: both daemons with their domains, reset between plays;
* ``python -m tests.difffuzz``: the long run (``make fuzz-diff``).

Used by ``tests/integration/test_random_differential.py`` (``make test``).
Nothing here imports pyxenstored's client, server or engine: the oracle
must not trust the code under test.  Only the simulator's ring (test
scaffolding) carries the guest's bytes, and gives domains their pages.
"""
