"""SynthScenes: a procedural multi-label world that needs no download."""
