"""The DeepLabV2-era recipe numbers, transcribed from shared/design/RECIPES.md ("DeepLabV2
family") and, where that table is silent, from the reference code named in each comment.

Tests compare every YAML under configs/ with these numbers, so a config can only drift from
the papers by changing this table too.
"""

from __future__ import annotations

# Shared by the whole family: "SGD 2.5e-4, m 0.9, wd 5e-4, poly 0.9, head lr x10", "250k
# schedule", DeepLabV2 ResNet-101, AdaptSegNet/ADVENT evaluation protocol.
DEEPLAB_COMMON = {
    "model.name": "deeplabv2_r101",
    "model.num_classes": 19,
    "optim.name": "sgd",
    "optim.lr": 2.5e-4,
    "optim.momentum": 0.9,
    "optim.weight_decay": 5e-4,
    "optim.schedule": "poly",
    "optim.power": 0.9,
    "optim.head_lr_mult": 10.0,
    "optim.schedule_iters": 250_000,
    "optim.warmup_iters": 0,
    "eval.mode": "whole",
    "eval.resize": [1024, 512],  # input 1024x512, logits upsampled to the 2048x1024 labels
    # nn.Upsample(..., align_corners=True): ADVENT eval_UDA.py, AdaptSegNet
    # evaluate_cityscapes.py, DACS evaluateUDA.py
    "eval.align_corners": True,
    # every image stretched to the recipe size (PIL image.resize in all three references)
    "data.source.keep_ratio": False,
    "data.target.keep_ratio": False,
    "data.val.name": "cityscapes",
    "data.val.split": "val",
    "data.target.name": "cityscapes",
    "data.target.split": "train",
}

# Source image sizes (W, H): "GTA 1280x720, CS 1024x512"; SYNTHIA 1280x760.
SOURCE_SIZE = {"gta": [1280, 720], "synthia": [1280, 760]}
TARGET_SIZE = [1024, 512]

# Adversarial settings shared by AdaptSegNet and AdvEnt: "adv 0.0002 (aux) / 0.001 (main)",
# discriminator "Adam 1e-4, betas 0.9/0.99" (5 conv 4x4 s2, 64-128-256-512-1), "seg aux 0.1".
ADVERSARIAL = {
    "multi_level": True,
    "lambda_seg_main": 1.0,
    "lambda_seg_aux": 0.1,
    "lambda_adv_main": 0.001,
    "lambda_adv_aux": 0.0002,
    "disc_lr": 1e-4,
    "disc_betas": [0.9, 0.99],
    "disc_ndf": 64,
    "gan": "vanilla",
    # ADVENT utils/loss.py cross_entropy_2d and AdaptSegNet utils/loss.py CrossEntropy2d
    # average over labelled pixels; both upsample with align_corners=True (train_UDA.py,
    # pytorch_0.4/train_gta2cityscapes_multi.py)
    "ce_reduction": "labelled_mean",
    "align_corners": True,
}

RECIPES: dict[str, dict] = {
    "adaptsegnet": {
        "init": "DeepLab_resnet_pretrained_init-f81d91e8.pth",  # ImageNet+COCO DeepLab weights
        "batch": 1,
        "max_iters": 150_000,  # 250k schedule, stopped at 150k
        "crop": None,  # no crop
        # AdaptSegNet's classifier: the forward returns inside its loop, so only the 6- and
        # 12-dilated branches compute (model/deeplab_multi.py; RECIPES.md says "only the first",
        # the code adds the second before returning); multi-level aux head on conv4
        "model.kwargs": {"aspp": "adaptsegnet", "aux": True},
        "eval.classes": {"gta": "19", "synthia": "13"},  # paper: SYNTHIA on 13 classes
        "uda": ADVERSARIAL,
    },
    "advent": {
        "init": "DeepLab_resnet_pretrained_imagenet.pth",  # ImageNet
        "batch": 1,
        "max_iters": 120_000,  # 250k schedule, stopped at 120k
        "crop": None,
        "model.kwargs": {"aspp": "advent", "aux": True},  # sums 6, 12, 18, 24
        "eval.classes": {"gta": "19", "synthia": "16"},
        "uda": ADVERSARIAL,
    },
    "minent": {
        "init": "DeepLab_resnet_pretrained_imagenet.pth",
        "batch": 1,
        "max_iters": 120_000,
        "crop": None,
        "model.kwargs": {"aspp": "advent", "aux": True},
        "eval.classes": {"gta": "19", "synthia": "16"},
        # "MinEnt weight 0.001"; the aux weight 0.0002 from ADVENT config.py LAMBDA_ENT_AUX
        "uda": {
            "multi_level": True,
            "lambda_seg_main": 1.0,
            "lambda_seg_aux": 0.1,
            "lambda_ent_main": 0.001,
            "lambda_ent_aux": 0.0002,
            "ce_reduction": "labelled_mean",
            "align_corners": True,
        },
    },
    "dacs": {
        "init": "resnet101COCO-41f33a49.pth",  # COCO
        "batch": 2,
        "max_iters": 250_000,
        "crop": [512, 512],  # "512x512 random crops of those"
        "model.kwargs": {"aspp": "adaptsegnet", "aux": False},
        "eval.classes": {"gta": "19", "synthia": "16"},
        # "EMA teacher 0.99, ClassMix (half the classes of a source image), confidence threshold
        # 0.968, pixel weight = fraction of confident pixels, colour jitter + blur"
        "uda": {
            "ema_alpha": 0.99,
            "pseudo_threshold": 0.968,
            "pseudo_weighting": "fraction",
            "mix_per_image": True,
            "blur": True,
            "color_jitter_strength": 0.25,  # DACS utils/transformsgpu.py colorJitter s=0.25
            "color_jitter_p_skip": 0.2,  # applied when U(0, 1) > 0.2
            "mix_loss_weight": 1.0,
            # vikolss/DACS trainUDA.py: update_ema_variables(iteration=i_iter) after step i
            # (alpha_0 = 0), ema_model.train() (BN on batch statistics), torch.unique(labels[i])
            # with the ignore filter commented out, colorJitter on the BGR input,
            # CrossEntropy2d (labelled mean) for the source and torch.mean of the pixel-weighted
            # CE for the mixed batch, interp with align_corners=True
            "ema_first_update": "copy",
            "teacher_bn": "batch",
            "mix_count_ignore": True,
            "color_jitter_channels": "bgr",
            "src_ce_reduction": "labelled_mean",
            "mix_ce_reduction": "all_pixel_mean",
            "align_corners": True,
        },
    },
    # Source-only: DACS's code base with the target part off (same init, data and schedule).
    "source_only": {
        "init": "resnet101COCO-41f33a49.pth",
        "batch": 2,
        "max_iters": 250_000,
        "crop": [512, 512],
        "model.kwargs": {"aspp": "adaptsegnet", "aux": False},
        "eval.classes": {"gta": "19", "synthia": "16"},
        "uda": {"ce_reduction": "labelled_mean", "align_corners": True},  # as DACS
    },
}

# Paper Table 4b baselines, provided on DACS (GTA5 -> Cityscapes).
TABLE_4B = ("if", "pf", "lbw", "focal")
# Paper Table 1 recipes: each has a _gbw (paper's equations) and a _gbw_authors (authors' code)
TABLE_1 = ("adaptsegnet", "advent", "dacs")
