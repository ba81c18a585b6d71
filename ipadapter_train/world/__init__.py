"""The learned world: a small picture domain the project draws itself, and small models learned on it.

No real SD or CLIP weights exist on the machines this project is built on, and random weights cannot show
that an adapter learns. The world can: `domain.py` draws 64 px pictures of a shape of one colour on a
background ("a red star on a grey background"), `reader.py` reads those attributes back from any picture
(generated ones too), and `build.py` (`ipadapter-train make-learned-world`) trains a VAE, a text encoder, a
UNet and a CLIP on the domain in the SD1.5 layout at small widths (the `world` family of families.py).
Every figure from the world is a learned-world figure: it shows the machinery learns and selects, and says
nothing about quality on real SD models.
"""
