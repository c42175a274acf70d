"""The global view (AttentionViz): every head's queries and keys over a corpus, in one picture.

corpus.py (the texts), embedding.py (the joint embedding, pure numpy), atlas.py (running the model
over a corpus and storing the result in the service's memo), handlers.py (the requests' payloads).
"""
