"""Auto mode: TMO finds the primary object, seeds XMem with it and keeps watching to re-seed (issue #9)."""

from workers.auto.config import AutoConfig, ReseedPolicy
from workers.auto.session import AutoResult, AutoSession, TMOOnlySession

__all__ = ["AutoConfig", "AutoResult", "AutoSession", "ReseedPolicy", "TMOOnlySession"]
