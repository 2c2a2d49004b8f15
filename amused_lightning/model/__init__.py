"""The aMUSEd model outside training: its parts, what builds them, the finetuning mode on them, and the sampler."""
