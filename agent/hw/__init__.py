"""Hardware capabilities (typing.Protocol) and their real implementations.

Nothing in here imports the link, the outbox, the cycle or anything under ``agent.sim``.
"""
