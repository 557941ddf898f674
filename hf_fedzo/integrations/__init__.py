"""Optional integrations with other frameworks; each needs its own extra and is imported explicitly.

``hf_fedzo.integrations.flower`` (``pip install 'hf-fedzo[flower]'``): the seed+scalar protocol over Flower.
Nothing here is imported by ``import hf_fedzo``.
"""
