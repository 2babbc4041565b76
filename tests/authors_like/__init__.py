"""Re-implementations (written for rankspec's tests, not copied) that mimic the call conventions and quirks
of the authors' loss classes as the issue and the vectors' README describe them; see each module."""
