"""Synthetic screens in the RxRx1 layout: phenotypes, batch effects, the cell renderer, the
screen writer, and the checks that image statistics cannot read its labels."""
