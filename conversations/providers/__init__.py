"""Provider clients: one module per provider, one error type for all of them.

Each client maps its provider's own error codes to `ProviderError(permanent=…)`,
so the services decide retry-or-give-up without knowing any provider's codes.
"""

from conversations.providers.base import ProviderError

__all__ = ["ProviderError"]
