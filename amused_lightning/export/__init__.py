"""Writing a trained model as diffusers files (a pipeline folder and a LoRA file), its model card, and the Hub push."""
