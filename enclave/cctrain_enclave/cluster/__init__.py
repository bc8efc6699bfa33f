"""Scale-out: data-parallel training across mutually attested enclave ranks.

:mod:`.handshake` forms the cluster (every rank attests to every other over an untrusted
rendezvous, per-link keys bound into the evidence), :mod:`.links` seals every message
between ranks, :mod:`.parallel` runs the steps (rank 0 coordinates; DP exact to one rank).
"""
