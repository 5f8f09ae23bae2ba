"""Dataset preparation: converters to the Ref-YouTube-VOS layout and the synthetic quick-start dataset."""
