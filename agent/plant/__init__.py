"""Plant-side tools: recorder, firmware-set signing and publishing."""
