"""One-sentence descriptions of the 50 Meta-World tasks (what the Sawyer arm must do).

Written from each task's objects and goal in Meta-World's ``metaworld/envs/sawyer_*_v3.py``.
"""

from __future__ import annotations

from orl.envs.metaworld import check_task

TASK_DESCRIPTIONS: dict[str, str] = {
    "assembly-v3": "Pick up a nut by its handle and fit it over a peg.",
    "basketball-v3": "Pick up a basketball and dunk it into the hoop.",
    "bin-picking-v3": "Pick a cube out of one bin and place it into the other bin.",
    "box-close-v3": "Pick up the lid and place it on top of the box to close it.",
    "button-press-topdown-v3": "Press a button downward from above.",
    "button-press-topdown-wall-v3": "Reach around a wall and press a button downward from above.",
    "button-press-v3": "Press a wall-mounted button forward horizontally.",
    "button-press-wall-v3": "Reach around a wall and press a button forward horizontally.",
    "coffee-button-v3": "Press the button on the front of the coffee machine.",
    "coffee-pull-v3": "Pull a mug out from under the coffee machine to a goal position.",
    "coffee-push-v3": "Push a mug across the table until it sits under the coffee machine.",
    "dial-turn-v3": "Rotate a dial on the table to a target angle.",
    "disassemble-v3": "Grasp a nut by its handle and lift it up off its peg.",
    "door-close-v3": "Push a hinged door shut.",
    "door-lock-v3": "Turn the door's lock knob downward to lock it.",
    "door-open-v3": "Pull a hinged door open by its handle.",
    "door-unlock-v3": "Rotate the door's lock knob out of the locked position to unlock it.",
    "drawer-close-v3": "Push an open drawer closed.",
    "drawer-open-v3": "Pull a drawer open by its handle.",
    "faucet-close-v3": "Rotate the faucet handle clockwise to turn it off.",
    "faucet-open-v3": "Rotate the faucet handle counter-clockwise to turn it on.",
    "hammer-v3": "Pick up a hammer and use it to drive a nail into the wall.",
    "hand-insert-v3": "Move the gripper down into a hole in the table.",
    "handle-press-side-v3": "Press a handle down from the side.",
    "handle-press-v3": "Press a handle down from the front.",
    "handle-pull-side-v3": "Pull a handle up from the side.",
    "handle-pull-v3": "Pull a handle up from the front.",
    "lever-pull-v3": "Pull a lever up by rotating it 90 degrees.",
    "peg-insert-side-v3": "Pick up a peg and insert it sideways into a hole in a box.",
    "peg-unplug-side-v3": "Pull a peg sideways out of the hole it is plugged into.",
    "pick-out-of-hole-v3": "Pick a puck out of a hole in the table and lift it to a goal above.",
    "pick-place-v3": "Pick up a puck and place it at a goal position.",
    "pick-place-wall-v3": "Pick up a puck, carry it over a wall, and place it at a goal position.",
    "plate-slide-back-side-v3": "Slide a plate sideways out of a cabinet back onto the table.",
    "plate-slide-back-v3": "Slide a plate backward out of a cabinet toward the robot.",
    "plate-slide-side-v3": "Slide a plate sideways across the table into a cabinet.",
    "plate-slide-v3": "Slide a plate forward across the table into a cabinet.",
    "push-back-v3": "Push a puck back across the table toward the robot to a goal position.",
    "push-v3": "Push a puck across the table to a goal position.",
    "push-wall-v3": "Push a puck around a wall to a goal position.",
    "reach-v3": "Move the robot's end effector to a goal position in the air.",
    "reach-wall-v3": "Reach past a wall to a goal position behind it.",
    "shelf-place-v3": "Pick up a block and place it on a shelf.",
    "soccer-v3": "Push a soccer ball into the goal net.",
    "stick-pull-v3": "Grasp a stick and use it to pull a thermos by its handle to a goal.",
    "stick-push-v3": "Grasp a stick and use it to push a thermos to a goal.",
    "sweep-into-v3": "Sweep a puck across the table into a hole.",
    "sweep-v3": "Sweep a puck sideways off the edge of the table.",
    "window-close-v3": "Slide an open window closed by its handle.",
    "window-open-v3": "Slide a closed window open by its handle.",
}


def describe(task: str) -> str:
    """One-sentence description of ``task`` (name with or without ``-v3``)."""
    return TASK_DESCRIPTIONS[check_task(task)]
