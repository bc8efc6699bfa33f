"""The party dashboard: a local web page showing what one party of a run may see.

``cctrain dashboard --enclave HOST:PORT --policy P --key K`` attests the enclave with the SDK,
then serves, on 127.0.0.1 only, a page (and the JSON it polls) with the policy and its
parties, this party's receipts, the run's phase and progress (a loss/ε chart where the
policy releases them), the verified journal and, for a recipient, the verified release.

Everything shown comes from the attested, request-signing session (:mod:`cctrain.client`);
the browser never talks to the enclave. The page is read-only. Every request must carry the
per-launch token printed with the URL and name the dashboard's own host and port (against
DNS rebinding); the answers carry a strict Content-Security-Policy.
"""

from cctrain.dashboard.server import DashboardServer, is_loopback
from cctrain.dashboard.view import PartyView

__all__ = ["DashboardServer", "PartyView", "is_loopback"]
