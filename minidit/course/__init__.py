"""Course tooling: the exercise markers (markers.py), student editions (exercises.py), the
autograder that runs the tests on them (autograder.py), and the helpers the notebooks share to
show images and source code (notebook.py).
"""
