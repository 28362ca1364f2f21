"""Course tooling: the exercise markers (markers.py), the student and teacher's editions
(exercises.py), the autograder that grades each exercise alone against stored inputs and outputs
(autograder.py, with its cases in cases.py), and the helpers the notebooks share to show images and
source code and to turn an unfinished exercise into one line (notebook.py).
"""
