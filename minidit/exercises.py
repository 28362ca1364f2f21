"""`python -m minidit.exercises`: student editions of minidit and their autograder.
The code is in minidit/course/exercises.py; this file only keeps the command short to type."""
import sys

from .course.exercises import main

if __name__ == "__main__":
    sys.exit(main())
