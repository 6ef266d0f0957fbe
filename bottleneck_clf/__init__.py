"""Transfer-learning image classifier: VGG16 bottleneck features and a small dense head."""

import os

# TensorFlow's C++ start-up chatter buries the stage output; users can still raise it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
