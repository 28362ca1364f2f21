"""Course tooling: the exercise markers (markers.py), the student and teacher's editions
(exercises.py, the command; bodies.py edits a function's body, editions.py writes an edition), the
autograder that grades each exercise alone against stored inputs and outputs (autograder.py, with
the reference's record in recording.py and its cases in cases.py), and the helpers the notebooks
share to show images and source code and to turn an unfinished exercise into one line (notebook.py).
"""
