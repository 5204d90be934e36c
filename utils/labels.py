"""What a label value means, for every part of seg-mentor: data (converters,
records, augmentation), training (loss, confusion) and evaluation (scores, pictures).

Labels are stored as 8-bit single-channel PNGs (utils/tf_records.py): values
0..255, where 0..num_classes-1 are classes and IGNORE_LABEL is "not scored"
(void, borders, padding).
"""

# Pascal VOC's border value, kept by every converter for void: never scored, never
# learnt from, and the value padding gets.
IGNORE_LABEL = 255
# Every value an 8-bit label can hold (lookup tables, bincounts): classes are below IGNORE_LABEL.
NUM_LABEL_VALUES = 256
