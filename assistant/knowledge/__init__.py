"""The knowledge base: bilingual YAML entries, one file per topic (see knowledge_base.py)."""
