"""Signed firmware sets on the station: manifest, trust, anti-rollback, image store, rollout.

Nothing in this package can sign: the station only holds public keys (see ``agent.plant`` for
the signing side). The flow is ``trust.verify_signed_set`` -> ``imagestore.ImageStore.fetch`` ->
``manager.RolloutManager`` (staging and activation between units).
"""
