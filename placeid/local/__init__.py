"""Local-only tooling, never deployed: the emulator stack, the bucket-to-function bridge (Eventarc's part on this
machine) and the packaging of each function's deployable folder."""
