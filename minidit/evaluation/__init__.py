"""The instrument that scores samples, standing apart from the model it judges: a small ViT
classifier built from minidit.layers (classifier.py) and its training (train_classifier.py),
class accuracy and a Fréchet distance on its features (evaluate.py), and the paper's section 5
experiments at teaching scale (experiments.py).
"""
