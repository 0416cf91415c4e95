"""Identity resolution: identifiers of messages matched into profiles (Segment's Unify)."""
