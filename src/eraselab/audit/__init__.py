"""``eraselab audit``: one command that measures how well a concept is erased and how far the attacks of a
threat model bring it back, and writes a card a model owner can publish (:mod:`eraselab.audit.card`)."""
