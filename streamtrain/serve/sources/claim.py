"""The claim protocol: one service per Redis consumer group or NATS durable consumer."""

from __future__ import annotations

import time

from ...errors import ConfigError, TrainingError

__all__ = ['Claims', 'LEASE_SECONDS']


# How long a consumer group (Redis) or durable consumer (NATS) stays claimed by a service that
# stopped renewing its claim (killed, or cut off from the broker); renewed every third of it.
LEASE_SECONDS = 30.0


class Claims:
    """One service per consumer group: a claim with a time to live at the broker, held by
    ``owner`` (the service's id; None: no claim). A broker source overrides ``_claim_text``,
    ``_claim``, ``_renew`` and ``_release``; the service calls ``claim``, ``keep_claim`` and
    ``release_claim``."""

    owner: str | None = None
    _renewed = 0.0

    def _claim_text(self) -> str:
        """What is claimed, in words (for messages)."""
        return self.name

    def _claim(self) -> bool:
        """Take the claim for ``owner`` (or keep it: a restart of the same service); False if another holds it."""
        return True

    def _renew(self) -> bool:
        """Extend the claim; False if another service holds it now."""
        return True

    def _release(self) -> None:
        """Give the claim up (a clean stop), so that another service may start at once."""

    def claim(self) -> None:
        """Refuse to start where another service reads the same group (``ConfigError``)."""
        if self.owner is None:
            return
        if not self._claim():
            raise self._refused()
        self._renewed = time.monotonic()

    def _refused(self) -> ConfigError:
        return ConfigError(f"{self._claim_text()}: another streamtrain serve reads it (its claim lapses "
                           f"{LEASE_SECONDS:.0f} s after it stops); stop it, or give this service its own")

    def release_claim(self) -> None:
        """On a clean stop: let another service start at once (if the broker is gone, the claim lapses)."""
        if self.owner is None:
            return
        try:
            self._release()
        except Exception:  # the broker gone
            pass

    def keep_claim(self) -> None:
        """Renew the claim every third of its time to live; stop learning if it was lost."""
        if self.owner is None or time.monotonic() - self._renewed < LEASE_SECONDS / 3:
            return
        if not self._renew():
            raise TrainingError(f"{self._claim_text()}: another streamtrain serve took it over (this one could not "
                                f"renew its claim for {LEASE_SECONDS:.0f} s); this service stops learning")
        self._renewed = time.monotonic()
