"""Postmortem skeletons rendered from what runbot recorded about an incident."""

from runbot.postmortem.context import UnknownIncident
from runbot.postmortem.render import render_for_slack, render_postmortem

__all__ = ["UnknownIncident", "render_for_slack", "render_postmortem"]
