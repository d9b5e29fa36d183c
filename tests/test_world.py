import numpy as np

from eraselab.models.tiny.world import ATTRIBUTES, load_world, split_words


def test_world_has_the_required_classes():
    world = load_world()
    assert len(world.shapes) >= 6 and {"circle", "square", "triangle", "star", "heart", "cross"} <= set(world.shapes)
    assert len(world.colors) >= 6 and {"red", "green", "blue"} <= set(world.colors)
    assert len(world.fills) >= 3 and len(world.backgrounds) >= 2
    assert world.image_size >= 32


def test_drawing_is_seeded_and_depends_on_attributes():
    world = load_world()
    attrs = world.sample_attributes(np.random.default_rng(1), 16)
    first = world.draw(attrs, np.random.default_rng(2))
    again = world.draw(attrs, np.random.default_rng(2))
    assert first.shape == (16, 32, 32, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again)
    # Background brightness follows the background attribute; the shape's colour is present in the image.
    corners = first[:, :2, :2].reshape(16, -1).mean(1)
    dark = attrs["background"] == world.backgrounds.index("dark")
    assert (corners[dark] < 80).all() and (corners[~dark] > 180).all()
    for image, color in zip(first, attrs["color"], strict=True):
        rgb = np.array(world.spec["colors"][world.colors[color]]["rgb"])
        assert (np.abs(image.reshape(-1, 3).astype(int) - rgb).sum(1) < 60).any()


def test_each_fill_style_draws_differently():
    world = load_world()
    base = {"shape": 0, "color": 0, "background": 0}
    inked = []
    for fill in range(len(world.fills)):
        image = world.draw_one({**base, "fill": fill}, np.random.default_rng(0))
        inked.append(int((np.abs(image.astype(int) - image[0, 0]).sum(-1) > 100).sum()))
    solid, outline, striped = (inked[world.fills.index(f)] for f in ("solid", "outline", "striped"))
    assert solid > striped > outline > 0


def test_heldout_paraphrases_never_appear_in_training_captions():
    world = load_world()
    rng = np.random.default_rng(0)
    attrs = world.sample_attributes(rng, 3000)
    texts = {world.caption(world.attributes_of(attrs, i), rng, "train").text for i in range(3000)}
    for attribute in ("shape", "color"):
        for index in range(len(world.classes[attribute])):
            heldout = world.heldout(attribute, index)
            assert heldout not in world.words_for(attribute, index, "train")
            assert not any(f" {heldout}" in t for t in texts), heldout
    # ...while CLIP's captions ("all") do use them.
    texts_all = {world.caption(world.attributes_of(attrs, i), rng, "all").text for i in range(3000)}
    assert any(world.heldout("shape", 3) in t for t in texts_all)


def test_captions_name_only_true_attributes_and_use_the_vocabulary():
    world = load_world()
    rng = np.random.default_rng(3)
    attrs = world.sample_attributes(rng, 200)
    vocabulary = set(world.vocabulary)
    for i in range(200):
        truth = world.attributes_of(attrs, i)
        caption = world.caption(truth, rng, "all")
        assert caption.matches(truth)
        assert set(split_words(caption.text)) <= vocabulary
        assert set(caption.named) == set(ATTRIBUTES)


def test_evaluation_prompts():
    world = load_world()
    star, red = world.shapes.index("star"), world.colors.index("red")
    assert world.prompt(star, red) == "a red star"
    assert world.prompt(star, red, "heldout") == f"a {world.heldout('color', red)} {world.heldout('shape', star)}"
    assert world.prompt(world.shapes.index("circle"), world.colors.index("orange")) == "an orange circle"
