"""Errors every layer may raise and the UI/API map to a message: no torch, no imports."""


class BadRequest(ValueError):
    """Input the user can fix; the UI shows the message, the API answers 4xx with it. Raised before queueing by the
    studio, or inside a job by the engine where only the loaded model tells (e.g. clip skip past its text
    encoder's layers)."""
